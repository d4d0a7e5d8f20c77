"""Presets: the Preset object, its file format, where presets live, and packs for sharing them."""
