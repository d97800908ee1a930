import java.nio.charset.StandardCharsets;
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

    static String reply(long s, int maxTokens) {
        StringBuilder sb = new StringBuilder();
        int rc = NativeBridge.generate(s, maxTokens, 0f, p -> { sb.append(new String(p, StandardCharsets.UTF_8)); return false; });
        check(rc == 0, "generate rc " + rc);
        return sb.toString();
    }

    /** 0.3: prefill ahead, per-image budgets, video frames, cost before encoding. */
    static void prefill(long m, byte[] img) {
        byte[] q = NativeBridge.utf8("What is in the image?");
        long cold = NativeBridge.createSession(m), ahead = NativeBridge.createSession(m);
        NativeBridge.addImage(cold, img);
        NativeBridge.addText(cold, NativeBridge.ROLE_USER, q);
        String coldReply = reply(cold, 8);

        NativeBridge.prefillText(ahead, NativeBridge.ROLE_SYSTEM, NativeBridge.utf8("You are terse."));
        NativeBridge.reset(ahead);  // clear the conversation: the same as cold again
        int[] cost = NativeBridge.imageCost(ahead, 400, 300, 0, 0, false);
        NativeBridge.prefillImage(ahead, img, 0, 0);
        double[] st = NativeBridge.stats(ahead);
        check(st[13] == cost[5] && st[14] == cost[2] && st[15] == cost[2] && st[11] > 0, "prefilled image = its cost");
        NativeBridge.addText(ahead, NativeBridge.ROLE_USER, q);
        String aheadReply = reply(ahead, 8);
        double[] st2 = NativeBridge.stats(ahead);
        check(st2[9] > 0 && st2[9] < cost[5] / 2.0 && st2[15] == st[15] && st2[0] == st[0],
              "question costs its own tokens: " + st2[9] + " of image " + cost[5]);
        check(aheadReply.equals(coldReply), "prefill ahead gives the cold reply");
        check(st2[7] > 0 && st2[8] >= 0 && st2[10] >= 1, "prefill/decode timings");

        int[] four = NativeBridge.imageCost(ahead, 1344, 896, 4, 0, false);
        int[] one = NativeBridge.imageCost(ahead, 1344, 896, 1, 0, false);
        check(four[2] <= 5 && four[2] > 1 && one[2] == 1 && four[5] > one[5], "budgets in the cost");
        byte[] rgb = new byte[1344 * 896 * 3];
        NativeBridge.prefillImageRgb(ahead, rgb, 1344, 896, 1344 * 3, 1, 0);
        check(NativeBridge.stats(ahead)[14] == 1 && NativeBridge.stats(ahead)[13] == one[5], "max_slices 1 obeyed");
        check(code(() -> NativeBridge.prefillImageRgb(ahead, rgb, 1344, 896, 1344 * 3, 99, 0)) == -13, "99 slices -> -13");
        check(code(() -> NativeBridge.prefillImageRgb(ahead, new byte[5], 1344, 896, 1344 * 3, 0, 0)) == -1, "short rgb -> -1");
        NativeBridge.prefillVideoFrame(ahead, rgb, 1344, 896, 1344 * 3, false);
        NativeBridge.prefillVideoFrame(ahead, rgb, 1344, 896, 1344 * 3, true);
        double[] st3 = NativeBridge.stats(ahead);
        check(st3[16] == 2 && st3[14] == 1 && st3[5] == 2, "video frames: one chunk each, not images");
        NativeBridge.freeSession(cold);
        NativeBridge.freeSession(ahead);
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
        prefill(m, img);
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
