"""tiled-stack's operator scripts: one module per command, each with a main()."""
