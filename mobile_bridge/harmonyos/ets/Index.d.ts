// Types of libminicpmv_edge_napi.so (harmonyos/napi/minicpmv_edge_napi.cpp). Keep in sync with it.
// Handles are opaque externals; free them explicitly (freeSession before freeModel).
export type ModelHandle = object;
export type SessionHandle = object;

export interface LoadOptions { nCtx?: number; nThreads?: number; nGpuLayers?: number; maxSlices?: number; }
export interface GenerateOptions { maxTokens?: number; temperature?: number; }
export interface Stats {
  imageEncodeMs: number; prefillTokPerS: number; decodeTokPerS: number; ttftMs: number;
  nCtxUsed: number; nImages: number; finishReason: number;
}

/** Errors thrown or rejected carry `code`: the mcv_status of minicpmv_edge.h (e.g. -5 mismatch, -7 image). */
export const version: () => string;
/** Runs on a worker thread. mmprojPath null: text only. */
export const loadModel: (textPath: string, mmprojPath: string | null, opts?: LoadOptions) => Promise<ModelHandle>;
export const freeModel: (model: ModelHandle) => void;
export const createSession: (model: ModelHandle) => SessionHandle;
export const freeSession: (session: SessionHandle) => void;
export const reset: (session: SessionHandle) => void;
/** role: 0 system, 1 user, 2 assistant */
export const addText: (session: SessionHandle, role: number, text: string) => void;
/** JPEG/PNG/BMP/GIF bytes; decode + slice + encode on a worker thread (seconds on phones). */
export const addImage: (session: SessionHandle, bytes: Uint8Array | ArrayBuffer) => Promise<number>;
export const setThinking: (session: SessionHandle, enabled: boolean) => void;
/** Streams pieces to onToken on the JS thread; resolves 0 when done, -9 after cancel(). Stop early with cancel(). */
export const generate: (session: SessionHandle, opts: GenerateOptions, onToken: (piece: string) => void) => Promise<number>;
export const cancel: (session: SessionHandle) => void;
export const promptText: (session: SessionHandle, withGenerationPrefix: boolean) => string;
export const stats: (session: SessionHandle) => Stats;
