/* The image limits every minicpmv-edge surface enforces: ONE file, read by the C bridge at
 * compile time (mobile_bridge/src/image.cpp includes it) and by Python at import
 * (minicpmv_edge/limits.py parses these #define lines). Change a number here and both follow.
 * Format: only `#define NAME INTEGER` lines (and comments); Python refuses anything else. */
#ifndef MINICPMV_EDGE_MEDIA_LIMITS_H
#define MINICPMV_EDGE_MEDIA_LIMITS_H

/* Largest image accepted, in pixels (width * height): 4096 x 4096. Checked from the header
 * before any pixel is decoded, so a PNG bomb costs nothing. */
#define MCV_IMAGE_MAX_PIXELS 16777216

/* Longest side / shortest side. llama.cpp's slicer needs both sides >= one 14-px patch after it
 * scales the image to 448 px; MiniCPM-V's processors refuse nothing, but past 50:1 the short
 * side collapses to nothing. */
#define MCV_IMAGE_MAX_ASPECT 50

/* Shortest side in pixels. */
#define MCV_IMAGE_MIN_SIDE 2

/* Largest encoded image file read into memory (bytes): 64 MiB. A 4096 x 4096 RGB BMP is 48 MiB. */
#define MCV_IMAGE_MAX_FILE_BYTES 67108864

#endif
