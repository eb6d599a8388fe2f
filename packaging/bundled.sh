#!/bin/sh
# Prints what the RPM spec declares about the crates built into the
# binaries: one `Provides: bundled(crate(NAME)) = VERSION` line per crate
# linked in (normal dependencies, no proc-macros) plus pci-ids, whose
# pci.ids data is built in, then `License:` with every license involved.
# tests/packaging.rs checks the spec against this; after a dependency
# change, paste its output into packaging/qubes-pci-admin.spec.
set -eu
cd "$(dirname "$0")/.."
crates=$( {
    cargo tree --offline --locked -e normal,no-proc-macro --prefix none --format '{p}|{l}' \
        -p qubes-pci-admin -p qubes-pci-rpc
    cargo tree --offline --locked -e build --prefix none --format '{p}|{l}' -p qubes-pci-admin --depth 1 \
        | grep '^pci-ids '
} | sed 's/ (\*)//; s/ (proc-macro)//' | grep -v '^qubes-pci' | grep -v '^$' | sort -u)
echo "$crates" | while IFS='|' read -r pkg lic; do
    name=${pkg%% *}
    version=${pkg#* v}
    echo "Provides:       bundled(crate($name)) = $version"
done
licenses=$( { echo "GPL-2.0-or-later"; echo "GPL-2.0-or-later OR BSD-3-Clause"; echo "$crates" | cut -d'|' -f2; } \
    | grep -v '^$' | sort -u | awk '/ OR | AND | WITH /{print "(" $0 ")"; next} {print}' | paste -sd'|' | sed 's/|/ AND /g')
echo "License:        $licenses"
