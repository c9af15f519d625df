#!/usr/bin/env bash
# Install the desktop entry, icon and AppStream metadata for the current user
# (or system-wide with PREFIX=/usr/local and root). Needs hmer-desktop on PATH.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
prefix="${PREFIX:-$HOME/.local}"
install -Dm644 "$here/io.github.hmer.desktop" "$prefix/share/applications/io.github.hmer.desktop"
install -Dm644 "$here/../../assets/hmer.svg" "$prefix/share/icons/hicolor/scalable/apps/io.github.hmer.svg"
install -Dm644 "$here/io.github.hmer.metainfo.xml" "$prefix/share/metainfo/io.github.hmer.metainfo.xml"
command -v update-desktop-database >/dev/null && update-desktop-database "$prefix/share/applications" || true
command -v gtk-update-icon-cache >/dev/null && gtk-update-icon-cache -q "$prefix/share/icons/hicolor" || true
echo "installed into $prefix/share (applications, icons, metainfo)"
