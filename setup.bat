@echo off
rem Set up CharLoRA in .venv (Windows). Safe to run again: installs nothing that is already there.
rem   setup.bat          runtime only (what "python gui.py" needs)
rem   setup.bat --dev    + test tools
rem Environment: PYTHON=C:\path\python.exe picks the interpreter; CHARLORA_TORCH=cpu|cuda forces the torch
rem build; CHARLORA_TORCH_INDEX=<url> installs torch from that index instead.
setlocal EnableDelayedExpansion
cd /d "%~dp0"

set DEV=0
if /i "%~1"=="--dev" set DEV=1

rem torch version from requirements.txt (the line "torch==X.Y.Z")
for /f "tokens=2 delims==" %%v in ('findstr /b "torch==" requirements.txt') do set TORCH_VERSION=%%v

if not defined PYTHON (
  where py >nul 2>nul && (py -3.11 -c "" >nul 2>nul && set "PYTHON=py -3.11")
)
if not defined PYTHON (
  where py >nul 2>nul && (py -3.12 -c "" >nul 2>nul && set "PYTHON=py -3.12")
)
if not defined PYTHON (
  where py >nul 2>nul && (py -3.10 -c "" >nul 2>nul && set "PYTHON=py -3.10")
)
if not defined PYTHON set PYTHON=python
%PYTHON% -c "import sys; sys.exit(0 if (3,10) <= sys.version_info[:2] <= (3,12) else 1)" >nul 2>nul
if errorlevel 1 (
  echo [setup] CharLoRA needs Python 3.10-3.12. Install Python 3.11 from python.org and run setup.bat again.
  exit /b 1
)

if not exist .venv\Scripts\python.exe (
  echo [setup] creating .venv
  %PYTHON% -m venv .venv || exit /b 1
)
set VPY=.venv\Scripts\python.exe

if not defined CHARLORA_TORCH (
  set CHARLORA_TORCH=cpu
  where nvidia-smi >nul 2>nul && (nvidia-smi -L >nul 2>nul && set CHARLORA_TORCH=cuda)
)

rem Is the right torch already there? (version, and CUDA or not)
set WANT_CUDA=0
if /i "%CHARLORA_TORCH%"=="cuda" set WANT_CUDA=1
%VPY% -c "import sys, torch; ok = torch.__version__.split('+')[0] == '%TORCH_VERSION%' and (torch.version.cuda is not None) == bool(%WANT_CUDA%); sys.exit(0 if ok else 1)" >nul 2>nul
if not errorlevel 1 (
  echo [setup] torch %TORCH_VERSION% ^(%CHARLORA_TORCH%^) already installed
  goto requirements
)

if defined CHARLORA_TORCH_INDEX (
  %VPY% -m pip install "torch==%TORCH_VERSION%" --index-url %CHARLORA_TORCH_INDEX% || exit /b 1
  goto requirements
)
if /i "%CHARLORA_TORCH%"=="cuda" (
  rem On Windows, PyPI's torch is CPU-only: the CUDA builds come from PyTorch's own index.
  echo [setup] NVIDIA GPU found: installing the CUDA build of torch %TORCH_VERSION% ^(about 3 GB^)
  for %%c in (cu128 cu130 cu126) do (
    %VPY% -m pip install "torch==%TORCH_VERSION%" --index-url https://download.pytorch.org/whl/%%c && goto requirements
  )
  echo [setup] could not install a CUDA build of torch. Set CHARLORA_TORCH_INDEX to the index for your CUDA version.
  exit /b 1
)
echo [setup] no NVIDIA GPU found: installing the CPU build of torch %TORCH_VERSION% (training will be slow)
%VPY% -m pip install "torch==%TORCH_VERSION%" || exit /b 1

:requirements
echo [setup] installing requirements.txt
%VPY% -m pip install --disable-pip-version-check -r requirements.txt || exit /b 1
if "%DEV%"=="1" (
  echo [setup] installing requirements-dev.txt
  %VPY% -m pip install --disable-pip-version-check -r requirements-dev.txt || exit /b 1
)
echo [setup] done. Start the app with: .venv\Scripts\python gui.py
endlocal
