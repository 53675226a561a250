"""`python -m fraudstream ...`: the command line, for processes the project starts itself."""

from fraudstream.cli import app

app()
