// Types of libminicpmv_edge_napi.so (harmonyos/napi/minicpmv_edge_napi.cpp). Keep in sync with it:
// tests/test_wrapper_checks.py type-checks MiniCpmvEngine.ets against this file with ohos-typescript,
// and test/bridge_test.js calls every function on Node.js.
// Handles are opaque externals; free them explicitly (freeSession before freeModel).
export type ModelHandle = object;
export type SessionHandle = object;

export interface LoadOptions { nCtx?: number; nThreads?: number; nGpuLayers?: number; maxSlices?: number; }
export interface GenerateOptions { maxTokens?: number; temperature?: number; }
/** This image's budget; absent or <= 0: the model's (maxSlices 1: no slicing). */
export interface ImageOptions { maxSlices?: number; maxPixels?: number; }
export interface ImageCostOptions extends ImageOptions { videoFrame?: boolean; }
/** mcv_image_cost: what an image costs before it is encoded. */
export interface ImageCost {
  width: number; height: number; nChunks: number; gridCols: number; gridRows: number;
  nTokens: number; nEmbdRows: number;
}
/** mcv_stats: the last reply's timings, the most recent image's, conversation counters. */
export interface Stats {
  imageEncodeMs: number; prefillTokPerS: number; decodeTokPerS: number; ttftMs: number;
  nCtxUsed: number; nImages: number; finishReason: number;
  prefillMs: number; decodeMs: number; nPrefillTokens: number; nDecodeTokens: number;
  lastImageEncodeMs: number; lastImageMs: number; lastImageNTokens: number; lastImageNChunks: number;
  nEncodedChunks: number; nVideoFrames: number; nCtx: number;
}

/** Errors thrown or rejected carry `code`: the mcv_status of minicpmv_edge.h (e.g. -5 mismatch, -7 image). */
export const version: () => string;
/** Runs on a worker thread. mmprojPath null: text only. */
export const loadModel: (textPath: string, mmprojPath: string | null, opts?: LoadOptions) => Promise<ModelHandle>;
export const freeModel: (model: ModelHandle) => void;
export const createSession: (model: ModelHandle) => SessionHandle;
export const freeSession: (session: SessionHandle) => void;
/** Clears the conversation (KV cache, images, counters). */
export const reset: (session: SessionHandle) => void;
/** role: 0 system, 1 user, 2 assistant */
export const addText: (session: SessionHandle, role: number, text: string) => void;
export const endTurn: (session: SessionHandle) => void;
/** JPEG/PNG/BMP/GIF bytes; decode + slice + encode on a worker thread (seconds on phones). */
export const addImage: (session: SessionHandle, bytes: Uint8Array | ArrayBuffer) => Promise<number>;
/** Prefill ahead (worker thread): text, an image, a video frame go into the KV cache now. */
export const prefillText: (session: SessionHandle, role: number, text: string) => Promise<number>;
export const prefillImage: (session: SessionHandle, bytes: Uint8Array | ArrayBuffer, opts?: ImageOptions) => Promise<number>;
export const prefillImageRgb: (session: SessionHandle, rgb: Uint8Array | ArrayBuffer, width: number, height: number,
  stride: number, opts?: ImageOptions) => Promise<number>;
/** Consecutive frames are one video; newVideo starts another right after one. */
export const prefillVideoFrame: (session: SessionHandle, rgb: Uint8Array | ArrayBuffer, width: number, height: number,
  stride: number, newVideo?: boolean) => Promise<number>;
/** Synchronous and cheap: no pixels, no encoder. */
export const imageCost: (session: SessionHandle, width: number, height: number, opts?: ImageCostOptions) => ImageCost;
export const setThinking: (session: SessionHandle, enabled: boolean) => void;
/** Streams pieces to onToken on the JS thread; resolves 0 when done, -9 after cancel(). Stop early with cancel(). */
export const generate: (session: SessionHandle, opts: GenerateOptions, onToken: (piece: string) => void) => Promise<number>;
/** Any thread: stops a running generate, or a prefill between image chunks. */
export const cancel: (session: SessionHandle) => void;
export const promptText: (session: SessionHandle, withGenerationPrefix: boolean) => string;
export const stats: (session: SessionHandle) => Stats;
