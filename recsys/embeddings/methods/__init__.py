"""One module per compression family; each compiles a feature into tables, transform, combiner."""
