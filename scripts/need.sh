#!/usr/bin/env bash
# need.sh COMMAND DEBIAN-PACKAGE...: make sure COMMAND exists, installing the
# Debian packages when it does not (as root, or through passwordless sudo).
# Fails loudly when that is impossible: the tests that need COMMAND never
# skip silently.
set -euo pipefail
cmd=$1
shift
command -v "$cmd" >/dev/null && exit 0
sudo=
if [ "$(id -u)" != 0 ]; then
	if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
		sudo="sudo -n"
	else
		echo "need.sh: $cmd is missing and cannot be installed (not root, no passwordless sudo): apt-get install $*" >&2
		exit 1
	fi
fi
if ! command -v apt-get >/dev/null; then
	echo "need.sh: $cmd is missing and this is not a Debian-like system: install the package that provides it ($*)" >&2
	exit 1
fi
echo "need.sh: installing $* for $cmd" >&2
$sudo apt-get install -y "$@" >/dev/null 2>&1 || { $sudo apt-get update >/dev/null && $sudo apt-get install -y "$@" >/dev/null; }
command -v "$cmd" >/dev/null || { echo "need.sh: $* installed but $cmd is still missing" >&2; exit 1; }
