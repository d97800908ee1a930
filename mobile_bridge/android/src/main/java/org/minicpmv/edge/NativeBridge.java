package org.minicpmv.edge;

/**
 * JNI surface of libminicpmv_edge_jni.so: one static native per C call, handles as
 * longs, text as UTF-8 byte arrays (JNI's "modified UTF-8" would mangle emoji).
 * Failures throw MiniCpmvException with the C status code and message.
 * Use MiniCpmvEngine (Kotlin) in apps; this class is what Java code and tests call.
 */
public final class NativeBridge {
    private NativeBridge() {}

    /** Streaming callback: one UTF-8 piece per call (never a split character); return true to stop. */
    public interface PieceCallback {
        boolean onPiece(byte[] utf8);
    }

    public static final int ROLE_SYSTEM = 0, ROLE_USER = 1, ROLE_ASSISTANT = 2;
    public static final int OK = 0, ERR_CANCELLED = -9;

    public static native String version();
    public static native long loadModel(byte[] textPath, byte[] mmprojPath, int nCtx, int nThreads,
                                        int nGpuLayers, int maxSlices);
    public static native void freeModel(long model);
    public static native long createSession(long model);
    public static native void freeSession(long session);
    public static native void reset(long session);
    public static native void addText(long session, int role, byte[] utf8);
    public static native void addImage(long session, byte[] encoded);
    public static native void addImageRgb(long session, byte[] rgb, int width, int height, int stride);
    public static native void setThinking(long session, boolean enabled);
    public static native void endTurn(long session);

    // since 0.3: prefill ahead of the question (encode now, while the user types), per-image budgets.
    /** add_text + evaluate everything pending now. */
    public static native void prefillText(long session, int role, byte[] utf8);
    /** maxSlices/maxPixels <= 0: the model's defaults. */
    public static native void prefillImage(long session, byte[] encoded, int maxSlices, long maxPixels);
    public static native void prefillImageRgb(long session, byte[] rgb, int width, int height, int stride,
                                              int maxSlices, long maxPixels);
    /** One frame; consecutive frames are one video, newVideo starts another right after one. */
    public static native void prefillVideoFrame(long session, byte[] rgb, int width, int height, int stride,
                                                boolean newVideo);
    /** Before encoding: {width, height, n_chunks, grid_cols, grid_rows, n_tokens, n_embd_rows}. */
    public static native int[] imageCost(long session, int width, int height, int maxSlices, long maxPixels,
                                         boolean videoFrame);
    /** Returns OK, or ERR_CANCELLED after cancel(); throws on errors. */
    public static native int generate(long session, int maxTokens, float temperature, PieceCallback cb);
    public static native void cancel(long session);
    public static native byte[] promptText(long session, boolean withGenerationPrefix);
    /**
     * {image_encode_ms, prefill_tok_per_s, decode_tok_per_s, ttft_ms, n_ctx_used, n_images, finish_reason,
     *  prefill_ms, decode_ms, n_prefill_tokens, n_decode_tokens, last_image_encode_ms, last_image_ms,
     *  last_image_n_tokens, last_image_n_chunks, n_encoded_chunks, n_video_frames, n_ctx} (mcv_stats)
     */
    public static native double[] stats(long session);

    public static byte[] utf8(String s) {
        return s == null ? null : s.getBytes(java.nio.charset.StandardCharsets.UTF_8);
    }
}
