//! Terminal emulation for the player and live watch: recorded device output in, screens out
//! (see [`super`]). Pure: bytes in, screen values out.
