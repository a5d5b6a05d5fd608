"""The two rich consoles: progress and notes on stderr, result tables on stdout.

Lines are never wrapped (soft_wrap), so a log file or CI output keeps one line per message.
"""

from rich.console import Console
from rich.table import Table

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
# Width of printed tables when stdout is not a terminal (CI logs, files): rich would squeeze them into 80.
LOG_WIDTH = 240


def print_wide(table: Table) -> None:
    """A result table on stdout, at full width also when stdout is a log file."""
    if out.is_terminal:
        out.print(table)
    else:
        Console(file=out.file, width=LOG_WIDTH, soft_wrap=True).print(table)
