#!/usr/bin/env bash
# Re-fetch the vendored uPlot charting library used by the built-in dashboard.
#
# The dashboard must not load anything from a CDN at run time, so uPlot's
# minified IIFE build, its CSS and its licence are committed under
#   src/orbitstream/dashboard/static/vendor/
# as
#   uPlot.iife.min.js, uPlot.min.css, uPlot.LICENSE
#
# Pinned version: uPlot 1.6.32 (npm package "uplot", MIT licence).
#   npm tarball sha1 (dist.shasum): c800a63b432bad692d6d746f44f0882aa73a49ae
# To upgrade: change UPLOT_VERSION and UPLOT_SHASUM below (see
# `npm view uplot@<version> dist.shasum`), run this script, check the
# dashboard in a browser, and commit the three files.
#
# Needs: npm, tar, sha1sum. Does not leave node_modules anywhere.
set -euo pipefail

UPLOT_VERSION="${UPLOT_VERSION:-1.6.32}"
UPLOT_SHASUM="${UPLOT_SHASUM:-c800a63b432bad692d6d746f44f0882aa73a49ae}"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${repo_root}/src/orbitstream/dashboard/static/vendor"

tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT

(cd "${tmp}" && npm pack --silent "uplot@${UPLOT_VERSION}" >/dev/null)
tarball="${tmp}/uplot-${UPLOT_VERSION}.tgz"
if [[ ! -f "${tarball}" ]]; then
    echo "npm pack did not produce ${tarball}" >&2
    exit 1
fi

actual="$(sha1sum "${tarball}" | cut -d' ' -f1)"
if [[ -n "${UPLOT_SHASUM}" && "${actual}" != "${UPLOT_SHASUM}" ]]; then
    echo "checksum mismatch for uplot@${UPLOT_VERSION}: got ${actual}, want ${UPLOT_SHASUM}" >&2
    exit 1
fi

tar -xzf "${tarball}" -C "${tmp}"
mkdir -p "${dest}"
install -m 0644 "${tmp}/package/dist/uPlot.iife.min.js" "${dest}/uPlot.iife.min.js"
install -m 0644 "${tmp}/package/dist/uPlot.min.css" "${dest}/uPlot.min.css"
install -m 0644 "${tmp}/package/LICENSE" "${dest}/uPlot.LICENSE"

echo "vendored uPlot ${UPLOT_VERSION} into ${dest}"
