"""The campaign as text (the terminal) and as Markdown (docs/mutation.md)."""

from __future__ import annotations

from .runner import CATEGORIES, COUNTED, KILLED


def _score(campaign, verdicts=None) -> str:
    verdicts = campaign.verdicts if verdicts is None else verdicts
    score = campaign.score_of(verdicts)
    judged = sum(campaign.count(c, verdicts) for c in COUNTED)
    killed = campaign.count(KILLED, verdicts) + campaign.count("killed by crash", verdicts)
    if score is None:
        return "score: nothing judged"
    return f"score: {killed}/{judged} = {100 * score:.1f}%"


def summary_lines(campaign) -> list[str]:
    lines = [
        f"{len(campaign.verdicts)} mutants, profile {campaign.profile}, "
        f"{len(campaign.corpus)} corpus traces on KVM, {campaign.probes} probe traces, "
        f"{campaign.elapsed:.0f} s",
        _score(campaign) + " (killed, incl. by crash, over killed + survived + not exercised)",
    ]
    for category in CATEGORIES:
        lines.append(f"  {category}: {campaign.count(category)}")
    if campaign.before:
        counts = ", ".join(f"{c} {campaign.count(c, campaign.before)}" for c in CATEGORIES)
        lines.append(
            f"on the original corpus ({campaign.before_corpus} traces): "
            + _score(campaign, campaign.before)
            + f" ({counts})"
        )
    if campaign.baseline_failures:
        lines.append(
            "baseline: these traces do not pass unmutated and judge nothing: "
            + ", ".join(sorted(campaign.baseline_failures))
        )
    return lines


def text(campaign, show=("survived", "not exercised by the corpus", "killed by crash")) -> str:
    out = summary_lines(campaign)
    for category in CATEGORIES:
        if category not in show:
            continue
        chosen = [v for v in campaign.verdicts if v.category == category]
        if chosen:
            out.append("")
            out.append(f"{category}:")
            for v in chosen:
                out.append(f"  {v.mutant.id} {v.mutant.description} [{v.mutant.where}]")
                out.append(f"      {v.reason}")
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(campaign) -> str:
    """The report as Markdown, paths relative to the checkout (the page is committed)."""
    from .runner import _checkout

    return _markdown(campaign).replace(_checkout() + "/", "")


def _markdown(campaign) -> str:
    out = ["## Result", "", "```", *summary_lines(campaign), "```", ""]
    if campaign.command:
        out += [f"Command: `{campaign.command}`", ""]
    for category in CATEGORIES:
        chosen = [v for v in campaign.verdicts if v.category == category]
        if not chosen or category == KILLED:
            continue
        out += [f"### {category} ({len(chosen)})", "", "| mutant | change | where | why |"]
        out.append("|---|---|---|---|")
        for v in chosen:
            out.append(
                f"| `{v.mutant.id}` | {_cell(v.mutant.description)} | {_cell(v.mutant.where)} "
                f"| {_cell(v.reason)} |"
            )
        out.append("")
    return "\n".join(out)
