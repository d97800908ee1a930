// Swift face of minicpmv_edge.h. Mechanical: one method per C call, status < 0 -> throw.
// No Swift compiler here: CI parses this file with tree-sitter-swift and checks every C name it
// uses against the header (mobile_bridge/python/swift_abi_check.py: functions exist with the same
// arity, struct fields exist, closures passed as C callbacks take the callback's parameters).
import CMiniCPMVEdge
import Foundation

public struct MiniCPMVError: Error, CustomStringConvertible {
    public let code: Int32
    public let message: String
    public var description: String { "\(message) (mcv status \(code))" }
}

@inline(__always)
private func check(_ rc: Int32, _ message: @autoclosure () -> String) throws {
    if rc < 0 { throw MiniCPMVError(code: rc, message: message()) }
}

public enum Role: Int32 { case system = 0, user = 1, assistant = 2 }

public final class MiniCPMVEngine {
    fileprivate let model: OpaquePointer

    public static var version: String { String(cString: mcv_version()) }

    /// Loads the text GGUF and its projector (nil: text only). Slow: call off the main thread.
    public init(textPath: String, mmprojPath: String?, nCtx: Int32 = 4096, nThreads: Int32 = 0,
                nGpuLayers: Int32 = 99, mmprojUseGPU: Bool = true, maxSlices: Int32 = 0) throws {
        var p = mcv_model_params()
        mcv_model_params_init(&p)
        p.n_ctx = nCtx
        p.n_threads = nThreads
        p.n_gpu_layers = nGpuLayers
        p.mmproj_use_gpu = mmprojUseGPU ? 1 : 0
        p.max_slices = maxSlices
        var out: OpaquePointer?
        try check(mcv_model_load(textPath, mmprojPath, &p, &out), String(cString: mcv_last_error()))
        model = out!
    }

    deinit { mcv_model_free(model) }  // sessions hold a strong reference, so none is alive here

    public func newSession() throws -> MiniCPMVSession { try MiniCPMVSession(engine: self) }
}

/// One conversation. Use from one task at a time; cancel() is safe from anywhere.
public final class MiniCPMVSession: @unchecked Sendable {
    private let engine: MiniCPMVEngine  // keeps the model alive while the session lives
    private let s: OpaquePointer

    fileprivate init(engine: MiniCPMVEngine) throws {
        self.engine = engine
        var out: OpaquePointer?
        try check(mcv_session_create(engine.model, &out), String(cString: mcv_last_error()))
        s = out!
    }

    deinit { mcv_session_free(s) }

    private func err() -> String { String(cString: mcv_session_errmsg(s)) }

    public func add(_ role: Role, _ text: String) throws {
        try check(mcv_session_add_text(s, mcv_role(UInt32(role.rawValue)), text), err())
    }

    /// JPEG/PNG bytes; decoded, sliced and encoded now (seconds): call off the main thread.
    public func addImage(_ data: Data) throws {
        try data.withUnsafeBytes { raw in
            try check(mcv_session_add_image_bytes(s, raw.bindMemory(to: UInt8.self).baseAddress, raw.count), err())
        }
    }

    public func addImage(path: String) throws { try check(mcv_session_add_image_file(s, path), err()) }

    public func addImageRGB(_ rgb: Data, width: Int32, height: Int32, stride: Int32) throws {
        try rgb.withUnsafeBytes { raw in
            try check(mcv_session_add_image_rgb(s, raw.bindMemory(to: UInt8.self).baseAddress, width, height, stride), err())
        }
    }

    /// External vision encoder (e.g. CoreML), called for every image chunk during addImage*:
    /// chunk 0 is the overview, then the slices row-major. Write info.n_tokens * info.n_embd floats
    /// into `out` and return true, or return false to let mtmd encode this chunk; a thrown error
    /// fails the addImage call. Pixels: reproduce the resize from info.image_rgb + geometry (see
    /// minicpmv_edge.h). Runs synchronously on the thread calling addImage*. nil: mtmd's encoder.
    public typealias VisionEncoder = (_ info: mcv_slice_info, _ out: UnsafeMutableBufferPointer<Float>) throws -> Bool

    private final class EncoderBox { let fn: VisionEncoder; init(_ fn: @escaping VisionEncoder) { self.fn = fn } }
    private var encoderBox: EncoderBox?  // retained while registered

    public func setEncoder(_ encoder: VisionEncoder?) throws {
        guard let encoder = encoder else {
            try check(mcv_session_set_encoder(s, nil, nil), err())
            encoderBox = nil
            return
        }
        let box = EncoderBox(encoder)
        let trampoline: mcv_encode_fn = { user, info, _, out, n in
            let box = Unmanaged<EncoderBox>.fromOpaque(user!).takeUnretainedValue()
            do {
                return try box.fn(info!.pointee, UnsafeMutableBufferPointer(start: out, count: n))
                    ? MCV_OK.rawValue : Int32(MCV_ENCODE_USE_DEFAULT)
            } catch {
                return MCV_ERR_INTERNAL.rawValue
            }
        }
        try check(mcv_session_set_encoder(s, trampoline, Unmanaged.passUnretained(box).toOpaque()), err())
        encoderBox = box
    }

    public func setThinking(_ on: Bool) throws { try check(mcv_session_set_thinking(s, on ? 1 : 0), err()) }
    public func endTurn() throws { try check(mcv_session_end_turn(s), err()) }
    /// Clears the conversation (KV cache, images, counters); keeps the context.
    public func reset() throws { try check(mcv_session_reset(s), err()) }
    /// Any thread: stops a running generate, or a prefill between image chunks.
    public func cancel() { mcv_session_cancel(s) }

    // MARK: prefill ahead (bridge 0.3): encode a photo as soon as it is picked, while the user
    // types; the question sent later costs only its own tokens (stats().n_prefill_tokens).
    // Each call is slow (seconds per image on phones): run it off the main actor.

    /// Slice budget and pixel cap of one image; 0: the model's (maxSlices 1: no slicing).
    public struct ImageBudget {
        public var maxSlices: Int32
        public var maxPixels: Int64
        public init(maxSlices: Int32 = 0, maxPixels: Int64 = 0) {
            self.maxSlices = maxSlices
            self.maxPixels = maxPixels
        }
    }

    private func imageParams(_ budget: ImageBudget, videoFrame: Bool = false) -> mcv_image_params {
        var p = mcv_image_params()
        mcv_image_params_init(&p)
        p.max_slices = budget.maxSlices
        p.max_pixels = budget.maxPixels
        p.video_frame = videoFrame ? 1 : 0
        return p
    }

    /// Adds text to a `role` turn and evaluates everything pending now.
    public func prefill(_ role: Role, _ text: String) throws {
        try check(mcv_session_prefill_text(s, mcv_role(UInt32(role.rawValue)), text), err())
    }

    public func prefillImage(_ data: Data, budget: ImageBudget = ImageBudget()) throws {
        var p = imageParams(budget)
        try data.withUnsafeBytes { raw in
            try check(mcv_session_prefill_image(s, raw.bindMemory(to: UInt8.self).baseAddress, raw.count, &p), err())
        }
    }

    public func prefillImage(path: String, budget: ImageBudget = ImageBudget()) throws {
        var p = imageParams(budget)
        try check(mcv_session_prefill_image_file(s, path, &p), err())
    }

    public func prefillImageRGB(_ rgb: Data, width: Int32, height: Int32, stride: Int32,
                                budget: ImageBudget = ImageBudget()) throws {
        var p = imageParams(budget)
        try rgb.withUnsafeBytes { raw in
            try check(mcv_session_prefill_image_rgb(s, raw.bindMemory(to: UInt8.self).baseAddress, width, height,
                                                    stride, &p), err())
        }
    }

    /// One decoded video frame (RGB888, e.g. from AVAssetImageGenerator at 1 fps), unsliced.
    /// Consecutive frames are one video; `newVideo` starts another right after one.
    public func prefillVideoFrame(_ rgb: Data, width: Int32, height: Int32, stride: Int32,
                                  newVideo: Bool = false) throws {
        var p = imageParams(ImageBudget(), videoFrame: true)
        p.video_frame = newVideo ? 2 : 1
        try rgb.withUnsafeBytes { raw in
            let px = raw.bindMemory(to: UInt8.self).baseAddress
            try check(newVideo ? mcv_session_prefill_image_rgb(s, px, width, height, stride, &p)
                               : mcv_session_prefill_video_frame(s, px, width, height, stride), err())
        }
    }

    /// What a width x height image would cost with `budget`, computed without encoding it.
    public func imageCost(width: Int32, height: Int32, budget: ImageBudget = ImageBudget(),
                          videoFrame: Bool = false) throws -> mcv_image_cost {
        var p = imageParams(budget, videoFrame: videoFrame)
        var c = mcv_image_cost()
        c.struct_size = MemoryLayout<mcv_image_cost>.size
        try check(mcv_session_image_cost(s, width, height, &p, &c), err())
        return c
    }

    /// Streams the reply through the pull API on a detached task; cancelling the consuming
    /// task (or calling cancel()) stops generation at the next token.
    public func generate(maxTokens: Int32 = 512, temperature: Float = 0) -> AsyncThrowingStream<String, Error> {
        AsyncThrowingStream { continuation in
            let task = Task.detached { [self] in
                var gp = mcv_gen_params()
                mcv_gen_params_init(&gp)
                gp.max_tokens = maxTokens
                gp.temperature = temperature
                do {
                    try check(mcv_session_begin(s, &gp), err())
                    while true {
                        var piece: UnsafeMutablePointer<CChar>?
                        let rc = mcv_session_next_alloc(s, &piece)
                        if rc == MCV_DONE.rawValue { break }
                        if rc == MCV_ERR_CANCELLED.rawValue { break }
                        try check(rc, err())
                        if let p = piece {
                            continuation.yield(String(cString: p))
                            mcv_string_free(p)
                        }
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { [self] _ in
                cancel()
                task.cancel()
            }
        }
    }

    public func promptText(withGenerationPrefix: Bool = true) throws -> String {
        var out: UnsafeMutablePointer<CChar>?
        try check(mcv_session_prompt_text(s, withGenerationPrefix ? 1 : 0, &out), err())
        defer { mcv_string_free(out) }
        return String(cString: out!)
    }

    public func stats() throws -> mcv_stats {
        var st = mcv_stats()
        st.struct_size = MemoryLayout<mcv_stats>.size
        try check(mcv_session_stats(s, &st), err())
        return st
    }
}
