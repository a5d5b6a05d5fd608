"""The two rich consoles: progress and notes on stderr, result tables on stdout.

Lines are never wrapped (soft_wrap), so a log file or CI output keeps one line per message.
"""

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
