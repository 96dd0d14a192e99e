"""Thin Typer commands over the same services the web and API use."""
