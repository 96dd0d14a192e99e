"""Web pages of the devices context (thin: parse, call one service, render)."""
