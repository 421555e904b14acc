// A fake cuBLAS handle (tests/fake_cuda/cuda_runtime.h): the fake device has no
// cuBLAS trainer; the handle only exists.
#pragma once

enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0 };
struct cublasContext;
typedef cublasContext* cublasHandle_t;
cublasStatus_t cublasCreate(cublasHandle_t* h);
cublasStatus_t cublasDestroy(cublasHandle_t h);
const char* cublasGetStatusString(cublasStatus_t s);
