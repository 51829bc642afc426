"""`make bench`: what scaling out buys, measured against one Tiled reached directly."""
