"""Web pages of the accounts context (thin: parse, call one service, render)."""
