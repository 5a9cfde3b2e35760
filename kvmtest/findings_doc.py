"""Regenerate docs/findings.md: ``python -m kvmtest.findings_doc [--matrix JSON KERNEL]``.

The catalog comes from reference/architecture.py; the host section from a run of the corpus
under ``sdm`` on this host's KVM (it needs /dev/kvm); the matrix section, when given, from the
findings JSON a matrix kernel brought back (ktap.txt of ``kvmtest matrix boot ... --run-args
'--profile sdm --findings --format json'``).
"""

import argparse
import json
import platform
from pathlib import Path

from kvmtest.report import findings as render


def host_section(profile_name: str = "sdm"):
    """(markdown, FindingsReport) of the corpus under an architectural profile on this KVM."""
    import reference
    from kvmtest.suite import choose_backend, load_traces, path_bases, run_all
    from kvmtest.trace.findings import collect

    backend = choose_backend("kvm", require_kvm=True)
    profile = reference.get_profile(profile_name)
    traces, _ = load_traces([])
    results = run_all(traces, profile, backend.context, jobs=4)
    found = collect(results, traces, profile, backend.context)
    host = f"{platform.release()}, {backend.host.get('backend', '?')}"
    return render.host_markdown(found, host, path_bases([])), found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvmtest.findings_doc")
    parser.add_argument("--doc", default="docs/findings.md")
    parser.add_argument("--matrix", nargs=2, metavar=("JSON", "KERNEL"))
    parser.add_argument("--no-host", action="store_true", help="keep the host section")
    args = parser.parse_args(argv)
    path = Path(args.doc)
    text = path.read_text(encoding="utf-8")
    text = render.replace_section(text, "catalog", render.catalog_markdown())
    if not args.no_host:
        text = render.replace_section(text, "host", host_section()[0])
    if args.matrix:
        raw = Path(args.matrix[0]).read_text(encoding="utf-8")
        document = json.loads(raw[raw.index("{") : raw.rindex("}") + 1])
        text = render.replace_section(
            text, "matrix", render.matrix_markdown(document, args.matrix[1])
        )
    path.write_text(text, encoding="utf-8")
    print("wrote", path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
