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
    session.close()
    engine.close()
    println("kotlin: $failures failure(s); version ${MiniCpmvEngine.version}")
    System.exit(if (failures == 0) 0 else 1)
}
