"""The option tables (Markdown) of ``dpnbids``, rendered from the parser so the docs never drift.

The manual includes them (docs/_ext/dpnbids_docs.py); ``python tools/options_table.py`` prints
them.
"""
import argparse

from dpnbids.cli.parser import build_parser


def _default(action) -> str:
    if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):  # argparse has no public action types
        return ""
    return "" if action.default in (None, False, argparse.SUPPRESS) else f"`{action.default}`"


def render() -> str:
    """Every option group of the parser as a Markdown table (option, default, description)."""
    parser = build_parser()
    lines = []
    for group in parser._action_groups:  # argparse has no public API for groups
        actions = [a for a in group._group_actions if a.option_strings]  # same
        if not actions:
            continue
        lines += ["", f"**{group.title}**", "", "| Option | Default | Description |", "|---|---|---|"]
        for a in actions:
            names = ", ".join(f"`{o}`" for o in a.option_strings if "_" not in o.lstrip("-"))
            choices = f" Choices: {', '.join(map(str, a.choices))}." if a.choices else ""
            text = (a.help or "").replace("%%", "%").replace("|", "\\|")
            lines.append(f"| {names} | {_default(a)} | {text}.{choices} |".replace("..", "."))
    return "\n".join(lines) + "\n"


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
