// bench_cuda_copy.cu - the device's memory bandwidth ceiling: device-to-device copies of a
// 1 GiB buffer, counted as bytes read + bytes written per second (what a decode matmul that
// reads weights once is measured against). Prints one line; exit 77 without a device.
#include <cstdio>
#include <cuda_runtime.h>

int main() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        std::printf("skipped: no CUDA device\n");
        return 77;
    }
    const size_t bytes = (size_t)1 << 30;
    void *a = nullptr, *b = nullptr;
    if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) {
        std::printf("cannot allocate 2 GiB on the device\n");
        return 1;
    }
    cudaMemset(a, 1, bytes);
    cudaEvent_t t0, t1;
    cudaEventCreate(&t0);
    cudaEventCreate(&t1);
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice); // warm up
    const int iters = 20;
    cudaEventRecord(t0);
    for (int i = 0; i < iters; i++) cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(t1);
    cudaEventSynchronize(t1);
    float ms = 0;
    cudaEventElapsedTime(&ms, t0, t1);
    cudaDeviceProp p;
    cudaGetDeviceProperties(&p, 0);
    double gbs = 2.0 * (double)bytes * iters / (ms / 1e3) / 1e9;
    std::printf("device %s: device-to-device copy %.1f GB/s (read + write)\n", p.name, gbs);
    cudaFree(a);
    cudaFree(b);
    return 0;
}
