package org.minicpmv.edge;

/** A failed bridge call: `code` is the mcv_status from minicpmv_edge.h. */
public class MiniCpmvException extends RuntimeException {
    public final int code;

    public MiniCpmvException(int code, String message) {
        super(message + " (mcv status " + code + ")");
        this.code = code;
    }
}
