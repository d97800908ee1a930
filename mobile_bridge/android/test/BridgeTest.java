import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicInteger;
import org.minicpmv.edge.MiniCpmvException;
import org.minicpmv.edge.NativeBridge;

/** JVM test of the JNI glue: java -Djava.library.path=BUILD BridgeTest TEXT MMPROJ OTHER_MMPROJ IMAGE */
public class BridgeTest {
    static int failures = 0;

    static void check(boolean ok, String what) {
        if (!ok) { System.out.println("FAIL " + what); failures++; }
    }

    static int code(Runnable r) {
        try { r.run(); return 0; } catch (MiniCpmvException e) { return e.code; }
    }

    public static void main(String[] a) throws Exception {
        System.loadLibrary("minicpmv_edge_jni");
        byte[] img = Files.readAllBytes(Paths.get(a[3]));
        check(code(() -> NativeBridge.loadModel(NativeBridge.utf8(a[0]), NativeBridge.utf8(a[2]), 1024, 2, 0, 0)) == -5, "mismatch -> -5");
        check(code(() -> NativeBridge.loadModel(NativeBridge.utf8("/no/such"), null, 1024, 2, 0, 0)) == -2, "missing -> -2");
        long m = NativeBridge.loadModel(NativeBridge.utf8(a[0]), NativeBridge.utf8(a[1]), 1024, 2, 0, 0);
        long s = NativeBridge.createSession(m);
        check(code(() -> NativeBridge.addImage(s, new byte[] {1, 2, 3})) == -7, "garbage image -> -7");
        check(code(() -> NativeBridge.addImage(s, null)) == -1, "null image -> -1");
        NativeBridge.addImage(s, img);
        NativeBridge.addText(s, NativeBridge.ROLE_USER, NativeBridge.utf8("What is in the image? 🦊"));
        StringBuilder sb = new StringBuilder();
        int rc = NativeBridge.generate(s, 6, 0f, p -> { sb.append(new String(p, java.nio.charset.StandardCharsets.UTF_8)); return false; });
        check(rc == 0, "generate rc " + rc);
        double[] st = NativeBridge.stats(s);
        check(st[5] == 1 && st[0] > 0, "stats images/encode");
        String prompt = new String(NativeBridge.promptText(s, false), java.nio.charset.StandardCharsets.UTF_8);
        check(prompt.contains("🦊") && prompt.contains("<__media__>"), "prompt text round-trips UTF-8");

        // cancel from another thread after 3 pieces
        NativeBridge.addText(s, NativeBridge.ROLE_USER, NativeBridge.utf8("Go on."));
        CountDownLatch reached = new CountDownLatch(1), cancelled = new CountDownLatch(1);
        AtomicInteger n = new AtomicInteger();
        Thread t = new Thread(() -> {
            try { reached.await(); } catch (InterruptedException e) { return; }
            NativeBridge.cancel(s);
            cancelled.countDown();
        });
        t.start();
        rc = NativeBridge.generate(s, 0, 0f, p -> {
            if (n.incrementAndGet() == 3) {
                reached.countDown();
                try { cancelled.await(); } catch (InterruptedException e) { return true; }
            }
            return false;
        });
        t.join();
        check(rc == NativeBridge.ERR_CANCELLED && n.get() == 3, "cancel rc " + rc + " pieces " + n.get());

        NativeBridge.reset(s);
        check(NativeBridge.promptText(s, false).length == 0, "reset clears the prompt");
        long s2 = NativeBridge.createSession(m);
        NativeBridge.addImage(s2, img);
        check(NativeBridge.generate(s2, 3, 0.7f, p -> false) == 0, "second session");
        check(code(() -> NativeBridge.freeModel(m)) == -14, "free model with sessions -> -14");
        NativeBridge.freeSession(s2);
        NativeBridge.freeSession(s);
        NativeBridge.freeModel(m);
        System.out.println("java: " + failures + " failure(s); reply: " + sb.length() + " chars");
        System.exit(failures == 0 ? 0 : 1);
    }
}
