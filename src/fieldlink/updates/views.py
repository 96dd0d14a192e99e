"""Web pages of the updates context (thin: parse, call one service, render)."""
