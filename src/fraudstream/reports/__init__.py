"""Period reports over what the pipeline stored: figures from SQL (`figures`), then HTML, CSV
and email (`render`, `mail`). `fraudstream report` (`cli_report`) is the command."""
