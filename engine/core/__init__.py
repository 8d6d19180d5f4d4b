"""Pure scheduling decisions: no IO, no clock (the time is passed in)."""
