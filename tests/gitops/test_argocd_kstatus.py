"""The Argo CD Lua health check, its Python twin and kstatus, on the table in tests/gitops/statuses/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from stagefleet import health

REPO = Path(__file__).resolve().parents[2]
LUA_PATH = REPO / "gitops" / "argocd-health.lua"
STATUS_DIR = Path(__file__).resolve().parent / "statuses"

ARGOCD_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
KSTATUSES = {"InProgress", "Current", "Failed", "Terminating"}


def load_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for path in sorted(STATUS_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        assert isinstance(data, list), f"{path.name}: expected a list of cases"
        for case in data:
            case["file"] = path.name
            cases.append(case)
    return cases


CASES = load_cases()
IDS = [c["name"] for c in CASES]


def test_status_table_is_well_formed() -> None:
    assert len(CASES) >= 15
    assert len(set(IDS)) == len(IDS), "case names must be unique"
    for case in CASES:
        assert set(case) <= {"name", "expect", "object", "conventional", "divergent", "file"}, case["name"]
        assert case["expect"]["argocd"] in ARGOCD_STATUSES, case["name"]
        assert case["expect"]["kstatus"] in KSTATUSES, case["name"]
        assert case["object"]["apiVersion"] == "stagefleet.io/v1alpha1"
        assert case["object"]["kind"] == "ImageBuild"
    # The table covers every phase and every outcome both tools can report.
    phases = {c["object"].get("status", {}).get("phase") for c in CASES}
    assert set(health.PHASES) <= phases
    assert {c["expect"]["argocd"] for c in CASES} >= {"Healthy", "Progressing", "Degraded"}
    assert {c["expect"]["kstatus"] for c in CASES} == KSTATUSES


class ArgoLua:
    """Runs the health script the way Argo CD does: Lua 5.1 (gopher-lua), `obj` a global, a table returned,
    and only the safe standard libraries (no os, io, require, load)."""

    def __init__(self, script: str) -> None:
        import lupa.lua51 as lua51

        self.lua = lua51.LuaRuntime(unpack_returned_tuples=True)
        self.run = self.lua.eval(
            """
            function(script, obj)
              local env = {
                obj = obj, ipairs = ipairs, pairs = pairs, next = next, tostring = tostring,
                tonumber = tonumber, type = type, select = select, error = error, pcall = pcall,
                string = string, table = table, math = math,
              }
              local chunk, err = loadstring(script, "argocd-health.lua")
              if chunk == nil then error(err) end
              setfenv(chunk, env)
              return chunk()
            end
            """
        )
        self.script = script

    def __call__(self, obj: dict[str, Any]) -> health.Result:
        table = self.lua.table_from(obj, recursive=True)
        hs = self.run(self.script, table)
        assert hs is not None, "the script returned nothing"
        result = dict(hs.items())
        assert set(result) <= {"status", "message"}, result
        return health.Result(str(result["status"]), str(result.get("message", "")))


@pytest.fixture(scope="module")
def argo_lua() -> ArgoLua:
    return ArgoLua(LUA_PATH.read_text())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_lua_health(case: dict[str, Any], argo_lua: ArgoLua) -> None:
    result = argo_lua(case["object"])
    assert result.status == case["expect"]["argocd"], result.message
    assert result.message, "Argo CD shows the message: it must never be empty"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_python_twin_matches_lua(case: dict[str, Any], argo_lua: ArgoLua) -> None:
    assert health.argocd_health(case["object"]) == argo_lua(case["object"])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_kstatus(case: dict[str, Any]) -> None:
    assert health.kstatus(case["object"]).status == case["expect"]["kstatus"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_lua_and_kstatus_agree(case: dict[str, Any], argo_lua: ArgoLua) -> None:
    lua = argo_lua(case["object"]).status
    ks = health.kstatus(case["object"]).status
    agree = health.agree(ks, lua)
    if case.get("divergent"):
        assert not agree, f"marked divergent but both say {lua}/{ks}: drop `divergent`"
    else:
        assert agree, f"Argo CD {lua} vs kstatus {ks}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_ready_and_conventions(case: dict[str, Any]) -> None:
    if "ready" in case["expect"]:
        assert health.is_ready(case["object"]) is case["expect"]["ready"]
    problems = health.convention_problems(case["object"])
    if case.get("conventional", True):
        assert problems == []
    else:
        assert problems, "marked unconventional but convention_problems() finds nothing"


def test_divergence_only_where_conventions_are_broken() -> None:
    """A status the operator is allowed to write never makes Argo CD and Flux disagree."""
    for case in CASES:
        if case.get("divergent"):
            assert case.get("conventional", True) is False, case["name"]


def test_kstatus_messages() -> None:
    stale = {"kind": "ImageBuild", "metadata": {"generation": 3}, "status": {"observedGeneration": 2}}
    assert health.kstatus(stale) == health.Result(
        "InProgress", "ImageBuild generation is 3, but latest observed generation is 2"
    )
    stalled = {"status": {"conditions": [{"type": "Stalled", "status": "True", "message": "no secret"}]}}
    assert health.kstatus(stalled) == health.Result("Failed", "no secret")
    # No generation at all (e.g. a hand-written object): the generation rule does not apply.
    assert health.kstatus({"status": {"observedGeneration": 7}}).status == "Current"


def test_lua_reports_stall_message(argo_lua: ArgoLua) -> None:
    obj = next(c["object"] for c in CASES if c["name"] == "stalled-missing-secret")
    assert "npm-token" in argo_lua(obj).message


def test_lua_healthy_message_names_digest(argo_lua: ArgoLua) -> None:
    obj = next(c["object"] for c in CASES if c["name"] == "succeeded")
    msg = argo_lua(obj).message
    digest = "sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270"
    assert msg == f"Built registry.example.com/seed:latest@{digest}"


def test_lua_sandbox_rejects_unsafe_library(argo_lua: ArgoLua) -> None:
    """The harness really is sandboxed: a script using os.* fails like it would in Argo CD."""
    import lupa.lua51 as lua51

    unsafe = ArgoLua("local t = os.time()\nreturn {status = 'Healthy', message = tostring(t)}")
    with pytest.raises(lua51.LuaError):
        unsafe({"status": {}})
    assert "os." not in argo_lua.script and "io." not in argo_lua.script


def test_chart_and_docs_carry_the_same_lua() -> None:
    lua = LUA_PATH.read_text()
    chart_copy = REPO / "charts" / "stagefleet" / "files" / "argocd-health.lua"
    assert chart_copy.read_bytes() == LUA_PATH.read_bytes(), (
        "charts/stagefleet/files/argocd-health.lua differs: "
        "cp gitops/argocd-health.lua charts/stagefleet/files/"
    )
    docs = (REPO / "docs" / "gitops.md").read_text()
    assert lua.strip() in docs, "docs/gitops.md must include gitops/argocd-health.lua verbatim"
