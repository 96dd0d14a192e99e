"""Web pages of the billing context (thin: parse, call one service, render)."""
