// Shared by the NAPI glue's files: argument helpers and the async-job machinery (one job =
// one bridge call on a libuv worker, settled as a Promise on the JS thread).
#pragma once
#ifdef __OHOS__
#include "napi/native_api.h"
#else
#include <node_api.h>
#endif

#include <cstdint>
#include <string>
#include <vector>

#include "minicpmv_edge.h"

namespace mcvnapi {

napi_value make_error(napi_env env, int rc, const std::string &msg);
// Throws for rc < 0 and returns false; the message comes from the handle or the thread.
bool ok(napi_env env, int rc, const char *msg);
void *ptr_arg(napi_env env, napi_value v);
std::string str_arg(napi_env env, napi_value v, bool *present = nullptr);
int32_t int_prop(napi_env env, napi_value obj, const char *name, int32_t dflt);
int32_t int_arg(napi_env env, napi_value v);
bool bytes_arg(napi_env env, napi_value v, std::vector<uint8_t> &out);
napi_value args(napi_env env, napi_callback_info info, size_t n, napi_value *argv);
mcv_session *session_arg(napi_env env, napi_callback_info info, size_t n, napi_value *a);

// Load and Generate are special (a model handle out; pieces through a threadsafe function);
// every other job is `Call`: one bridge call on the session, run on the worker.
enum class Kind { Load, Call, Generate };

struct Job {
    Kind kind;
    napi_async_work work = nullptr;
    napi_deferred deferred = nullptr;
    napi_threadsafe_function tsfn = nullptr;  // Generate only
    std::string a, b;                          // paths (Load), text (Call)
    std::vector<uint8_t> data;                 // image bytes or RGB (Call)
    int32_t role = 0, w = 0, h = 0, stride = 0;
    mcv_image_params ip{};
    int (*call)(Job *) = nullptr;              // Call: the bridge call
    mcv_model_params mp{};
    mcv_gen_params gp{};
    mcv_session *s = nullptr;
    mcv_model *model = nullptr;
    int rc = 0;
    std::string err;
    int refs = 1;  // Generate: 2 (complete + the last tsfn message, in either order; JS thread only)
};

// Queues `j` on a worker; returns the Promise it settles.
napi_value queue(napi_env env, Job *j, const char *name);

// prefill_napi.cpp
napi_value AddImage(napi_env env, napi_callback_info info);
napi_value PrefillText(napi_env env, napi_callback_info info);
napi_value PrefillImage(napi_env env, napi_callback_info info);
napi_value PrefillImageRgb(napi_env env, napi_callback_info info);
napi_value PrefillVideoFrame(napi_env env, napi_callback_info info);
napi_value ImageCost(napi_env env, napi_callback_info info);

}  // namespace mcvnapi
