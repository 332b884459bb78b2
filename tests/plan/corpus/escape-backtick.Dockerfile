# escape=`
FROM mcr.microsoft.com/windows/servercore:ltsc2022 AS build
RUN powershell -Command `
    Write-Host C:\path\to
COPY C:\src C:\dst
