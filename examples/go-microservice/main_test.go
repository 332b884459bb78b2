package main

import "testing"

func TestGreeting(t *testing.T) {
	if got := greeting(""); got != "hello, world (version dev)\n" {
		t.Fatalf("greeting(\"\") = %q", got)
	}
	if got := greeting("fleet"); got != "hello, fleet (version dev)\n" {
		t.Fatalf("greeting(\"fleet\") = %q", got)
	}
}
