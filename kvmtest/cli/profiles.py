"""The model profile a command judges by: `--profile NAME` and `--set SWITCH=VALUE`.

Without --profile, the profile follows the kernel release (reference.profile_for_release),
which refuses a release no profile covers rather than judging it by a neighbour. --set
changes one switch of the chosen profile ("what if my kernel did X"); every report names the
result by its label, e.g. `mainline[hlt_checks_pending_events=false]`.
"""

import reference
from reference.architecture import over_kernel

from .errors import UsageError


def add_profile_options(parser, default: str | None = None) -> None:
    known = ", ".join(reference.PROFILES)
    parser.add_argument(
        "--profile",
        default=default,
        help=f"model profile ({known}; default: "
        + (default if default else "chosen from the kernel release")
        + ")",
    )
    parser.add_argument(
        "--set",
        dest="switches",
        action="append",
        default=[],
        metavar="SWITCH=VALUE",
        help="change one switch of the profile (repeatable); `kvmtest model --format profiles` "
        "lists them",
    )


def resolve_profile(args, release: str | None = None) -> reference.Profile:
    """The Profile named by --profile (or covering `release`), with --set applied."""
    try:
        if args.profile:
            profile = reference.get_profile(args.profile)
            if reference.is_architectural(profile) and release:
                # sdm/apm judge the manual's points; the ioctls behave as this kernel's (or,
                # for a release no profile covers, mainline's)
                try:
                    profile = over_kernel(profile, reference.profile_for_release(release))
                except reference.ModelError:
                    pass
        elif release:
            profile = reference.profile_for_release(release)
        else:
            profile = reference.get_profile("mainline")
        return reference.apply_switches(profile, args.switches)
    except reference.ModelError as exc:
        raise UsageError(str(exc)) from None
