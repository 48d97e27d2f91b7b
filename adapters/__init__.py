"""One module per channel; the core never imports from here."""
