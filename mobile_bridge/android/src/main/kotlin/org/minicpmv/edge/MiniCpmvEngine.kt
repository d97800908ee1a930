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

    data class Stats(val imageEncodeMs: Double, val prefillTokPerS: Double, val decodeTokPerS: Double,
                     val ttftMs: Double, val nCtxUsed: Int, val nImages: Int, val finishReason: Int)

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

        fun cancel() = NativeBridge.cancel(s)
        fun reset() = NativeBridge.reset(s)
        fun promptText(withGenerationPrefix: Boolean = true): String =
            String(NativeBridge.promptText(s, withGenerationPrefix), Charsets.UTF_8)

        fun stats(): Stats {
            val v = NativeBridge.stats(s)
            return Stats(v[0], v[1], v[2], v[3], v[4].toInt(), v[5].toInt(), v[6].toInt())
        }

        override fun close() {
            if (s != 0L) {
                NativeBridge.freeSession(s)
                s = 0L
            }
        }
    }
}
