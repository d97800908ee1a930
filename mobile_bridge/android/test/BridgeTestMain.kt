import java.io.File
import java.util.concurrent.CountDownLatch
import org.minicpmv.edge.MiniCpmvEngine
import org.minicpmv.edge.MiniCpmvException

/** Kotlin test of MiniCpmvEngine: kotlin -Djava.library.path=BUILD -cp ... BridgeTestMainKt TEXT MMPROJ OTHER IMAGE */
fun main(args: Array<String>) {
    var failures = 0
    fun check(ok: Boolean, what: String) { if (!ok) { println("FAIL $what"); failures++ } }
    try {
        MiniCpmvEngine.load(args[0], args[2], nCtx = 1024, nThreads = 2)
        check(false, "mismatched projector must throw")
    } catch (e: MiniCpmvException) {
        check(e.code == -5, "mismatch code ${e.code}")
    }
    val engine = MiniCpmvEngine.load(args[0], args[1], nCtx = 1024, nThreads = 2)
    val session = engine.newSession()
    session.addImage(File(args[3]).readBytes())
    session.addUserText("Describe the image.")
    val reply = StringBuilder()
    check(session.generate(maxTokens = 6) { piece -> reply.append(piece); false }, "generate")
    check(session.stats().nImages == 1, "stats")
    session.addUserText("Continue.")
    val reached = CountDownLatch(1)
    val done = CountDownLatch(1)
    val t = Thread { reached.await(); session.cancel(); done.countDown() }
    t.start()
    var n = 0
    val finished = session.generate(maxTokens = 0) { _ -> n++; if (n == 3) { reached.countDown(); done.await() }; false }
    t.join()
    check(!finished && n == 3, "cancel: finished=$finished pieces=$n")
    session.reset()
    check(session.promptText(false).length == 0, "reset")

    // 0.3: encode the photo ahead of the question; the question then costs only its own tokens
    val cost = session.imageCost(400, 300)
    session.prefillText(MiniCpmvEngine.Role.SYSTEM, "You are terse.")
    session.prefillImage(File(args[3]).readBytes())
    val pre = session.stats()
    check(pre.lastImageNTokens == cost.nTokens && pre.nEncodedChunks == cost.nChunks, "prefill = cost: $pre $cost")
    session.addUserText("What is in the image?")
    check(session.generate(maxTokens = 4) { false }, "generate after prefill")
    val post = session.stats()
    check(post.nPrefillTokens in 1 until cost.nTokens / 2 && post.nEncodedChunks == pre.nEncodedChunks,
          "question tokens only: ${post.nPrefillTokens}")
    val one = session.imageCost(1344, 896, maxSlices = 1)
    session.prefillImageRgb(ByteArray(1344 * 896 * 3), 1344, 896, maxSlices = 1)
    check(session.stats().lastImageNChunks == 1 && one.nChunks == 1, "per-image max_slices")
    session.prefillVideoFrame(ByteArray(64 * 48 * 3), 64, 48)
    check(session.stats().nVideoFrames == 1, "video frame")
    try {
        session.prefillImageRgb(ByteArray(30), 10, 1, maxSlices = 99)
        check(false, "99 slices must throw")
    } catch (e: MiniCpmvException) {
        check(e.code == -13, "99 slices code ${e.code}")
    }
    session.reset()
    session.close()
    engine.close()
    println("kotlin: $failures failure(s); version ${MiniCpmvEngine.version}")
    System.exit(if (failures == 0) 0 else 1)
}
