package org.minicpmv.edge

/**
 * Kotlin face of the bridge for Android apps. Mechanical over NativeBridge: every call
 * maps to one C function of minicpmv_edge.h; failures throw MiniCpmvException.
 *
 * Threads: load and addImage are slow (call them off the main thread); one Session is
 * used by one thread at a time, except cancel(), which any thread may call.
 * Prompt format, thinking prefixes and stop strings come from the GGUF, not from here.
 */
class MiniCpmvEngine private constructor(private var handle: Long) : AutoCloseable {

    companion object {
        init {
            System.loadLibrary("minicpmv_edge_jni")
        }

        @JvmStatic
        @JvmOverloads
        fun load(textPath: String, mmprojPath: String?, nCtx: Int = 4096, nThreads: Int = 0,
                 nGpuLayers: Int = 0, maxSlices: Int = 0): MiniCpmvEngine =
            MiniCpmvEngine(NativeBridge.loadModel(NativeBridge.utf8(textPath), NativeBridge.utf8(mmprojPath),
                nCtx, nThreads, nGpuLayers, maxSlices))

        val version: String get() = NativeBridge.version()
    }

    enum class Role(val code: Int) { SYSTEM(0), USER(1), ASSISTANT(2) }

    /** mcv_stats: timings of the last reply and of the most recent image, conversation counters. */
    data class Stats(val imageEncodeMs: Double, val prefillTokPerS: Double, val decodeTokPerS: Double,
                     val ttftMs: Double, val nCtxUsed: Int, val nImages: Int, val finishReason: Int,
                     val prefillMs: Double, val decodeMs: Double, val nPrefillTokens: Int, val nDecodeTokens: Int,
                     val lastImageEncodeMs: Double, val lastImageMs: Double, val lastImageNTokens: Int,
                     val lastImageNChunks: Int, val nEncodedChunks: Int, val nVideoFrames: Int, val nCtx: Int)

    /** What an image costs before it is encoded (mcv_image_cost). */
    data class ImageCost(val width: Int, val height: Int, val nChunks: Int, val gridCols: Int, val gridRows: Int,
                         val nTokens: Int, val nEmbdRows: Int)

    fun newSession(): Session = Session(NativeBridge.createSession(handle))

    override fun close() {
        if (handle != 0L) {
            NativeBridge.freeModel(handle)  // throws if sessions are still open
            handle = 0L
        }
    }

    inner class Session internal constructor(private var s: Long) : AutoCloseable {
        fun addText(role: Role, text: String) = NativeBridge.addText(s, role.code, NativeBridge.utf8(text))
        fun addUserText(text: String) = addText(Role.USER, text)

        /** JPEG/PNG/BMP/GIF bytes; decoded, sliced and encoded now (seconds on a phone). */
        fun addImage(encoded: ByteArray) = NativeBridge.addImage(s, encoded)
        fun addImageRgb(rgb: ByteArray, width: Int, height: Int, stride: Int = width * 3) =
            NativeBridge.addImageRgb(s, rgb, width, height, stride)

        fun setThinking(enabled: Boolean) = NativeBridge.setThinking(s, enabled)
        fun endTurn() = NativeBridge.endTurn(s)

        // Prefill ahead: call these as soon as the user picks a photo or a frame arrives (off the main
        // thread); the question sent later costs only its own tokens (stats().nPrefillTokens).

        /** Adds text to a [role] turn and evaluates everything pending now. */
        fun prefillText(role: Role, text: String) = NativeBridge.prefillText(s, role.code, NativeBridge.utf8(text))

        /** Encodes an image now; [maxSlices] / [maxPixels] <= 0: the model's budget (1 = no slicing). */
        fun prefillImage(encoded: ByteArray, maxSlices: Int = 0, maxPixels: Long = 0L) =
            NativeBridge.prefillImage(s, encoded, maxSlices, maxPixels)

        fun prefillImageRgb(rgb: ByteArray, width: Int, height: Int, stride: Int = width * 3, maxSlices: Int = 0,
                            maxPixels: Long = 0L) =
            NativeBridge.prefillImageRgb(s, rgb, width, height, stride, maxSlices, maxPixels)

        /**
         * One decoded video frame (RGB888), unsliced. Consecutive frames are one video; [newVideo]
         * starts another right after one.
         */
        fun prefillVideoFrame(rgb: ByteArray, width: Int, height: Int, stride: Int = width * 3,
                              newVideo: Boolean = false) =
            NativeBridge.prefillVideoFrame(s, rgb, width, height, stride, newVideo)

        /** The cost of a width x height image with this budget, computed without encoding it. */
        fun imageCost(width: Int, height: Int, maxSlices: Int = 0, maxPixels: Long = 0L,
                      videoFrame: Boolean = false): ImageCost {
            val v = NativeBridge.imageCost(s, width, height, maxSlices, maxPixels, videoFrame)
            return ImageCost(v[0], v[1], v[2], v[3], v[4], v[5], v[6])
        }

        /**
         * Streams the reply: onToken gets complete UTF-8 pieces; return true to stop.
         * Returns false when cancel() ended it, true otherwise.
         */
        fun generate(maxTokens: Int = 512, temperature: Float = 0f, onToken: (String) -> Boolean): Boolean {
            val cb = object : NativeBridge.PieceCallback {
                override fun onPiece(utf8: ByteArray): Boolean = onToken(String(utf8, Charsets.UTF_8))
            }
            return NativeBridge.generate(s, maxTokens, temperature, cb) == NativeBridge.OK
        }

        /** Any thread: stops a running generate or prefill (between image chunks). */
        fun cancel() = NativeBridge.cancel(s)
        /** Clears the conversation (KV cache, images, counters); keeps the context. */
        fun reset() = NativeBridge.reset(s)
        fun promptText(withGenerationPrefix: Boolean = true): String =
            String(NativeBridge.promptText(s, withGenerationPrefix), Charsets.UTF_8)

        fun stats(): Stats {
            val v = NativeBridge.stats(s)
            return Stats(v[0], v[1], v[2], v[3], v[4].toInt(), v[5].toInt(), v[6].toInt(), v[7], v[8],
                         v[9].toInt(), v[10].toInt(), v[11], v[12], v[13].toInt(), v[14].toInt(), v[15].toInt(),
                         v[16].toInt(), v[17].toInt())
        }

        override fun close() {
            if (s != 0L) {
                NativeBridge.freeSession(s)
                s = 0L
            }
        }
    }
}
