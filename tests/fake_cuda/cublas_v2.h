// A fake cuBLAS (tests/fake_cuda/cuda_runtime.h): the calls kernels/cuda_cublas.cu
// makes. A handle belongs to the device current at cublasCreate; its products
// are queued on the handle's stream like a kernel, after the checks cuBLAS
// makes (cublasSgemmStridedBatched's argument rules: CUBLAS_STATUS_INVALID_VALUE)
// and the fake's own (every matrix of the batch in device memory of the
// handle's device; the handle used with its own device current). The product
// follows the BLAS definition, column-major: C_b = alpha op(A_b) op(B_b) +
// beta C_b, C not read when beta is 0. Its sums run over k from the last term
// to the first, an order of its own, so that the cuBLAS path's results differ
// from the other paths' in the last bits, as real cuBLAS's do.
#pragma once

#include "cuda_runtime.h"

enum cublasStatus_t {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_ALLOC_FAILED = 3,
  CUBLAS_STATUS_INVALID_VALUE = 7,
};
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasMath_t { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TF32_TENSOR_OP_MATH = 3 };
struct cublasContext;
typedef cublasContext* cublasHandle_t;
cublasStatus_t cublasCreate(cublasHandle_t* h);
cublasStatus_t cublasDestroy(cublasHandle_t h);
const char* cublasGetStatusString(cublasStatus_t s);
const char* cublasGetStatusName(cublasStatus_t s);
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s);
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode);
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                                         int n, int k, const float* alpha, const float* A, int lda,
                                         long long strideA, const float* B, int ldb, long long strideB,
                                         const float* beta, float* C, int ldc, long long strideC,
                                         int batchCount);
cublasStatus_t cublasDgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                                         int n, int k, const double* alpha, const double* A, int lda,
                                         long long strideA, const double* B, int ldb, long long strideB,
                                         const double* beta, double* C, int ldc, long long strideC,
                                         int batchCount);
