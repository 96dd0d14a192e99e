"""Web pages of the audit context (thin: parse, call one service, render)."""
