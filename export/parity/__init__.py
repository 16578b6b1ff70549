"""``rfedge parity``: an edge model's decisions against a full-precision reference PRM."""
