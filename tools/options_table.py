"""Print the README option tables (markdown) from the parser, so the docs never drift."""
import argparse

from dpnbids.cli.parser import build_parser


def main() -> None:
    parser = build_parser()
    for group in parser._action_groups:  # noqa: SLF001 - argparse has no public API for this
        actions = [a for a in group._group_actions if a.option_strings]  # noqa: SLF001
        if not actions:
            continue
        print(f"\n**{group.title}**\n")
        print("| Option | Default | Description |")
        print("|---|---|---|")
        for a in actions:
            if isinstance(a, (argparse._HelpAction, argparse._VersionAction)):  # noqa: SLF001
                default = ""
            else:
                default = "" if a.default in (None, False, argparse.SUPPRESS) else f"`{a.default}`"
            names = ", ".join(f"`{o}`" for o in a.option_strings if "_" not in o.lstrip("-"))
            choices = f" Choices: {', '.join(map(str, a.choices))}." if a.choices else ""
            text = (a.help or "").replace("%%", "%").replace("|", "\\|")
            print(f"| {names} | {default} | {text}.{choices} |".replace("..", "."))


if __name__ == "__main__":
    main()
