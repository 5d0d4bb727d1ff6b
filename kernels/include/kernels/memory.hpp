#pragma once
// Memory on a device, so that the trainer never calls CUDA itself.
#include <cstddef>
#include <utility>

#include "kernels/device.hpp"

namespace aiayn::kernels {

void* device_alloc(Device d, size_t bytes);          // zero-filled; throws aiayn::Error on failure
void device_free(Device d, void* p) noexcept;
void device_zero(Device d, void* p, size_t bytes, Stream s = nullptr);
// Copies between host and device (or within one). `to`/`from` say where each pointer lives.
void device_copy(Device to, void* dst, Device from, const void* src, size_t bytes, Stream s = nullptr);

// An owning array of T on one device.
template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(Device d, size_t n) : dev_(d), n_(n), p_(static_cast<T*>(n ? device_alloc(d, n * sizeof(T)) : nullptr)) {}
  ~DeviceArray() { reset(); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& o) noexcept { *this = std::move(o); }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    if (this != &o) {
      reset();
      dev_ = o.dev_;
      n_ = std::exchange(o.n_, 0);
      p_ = std::exchange(o.p_, nullptr);
    }
    return *this;
  }
  void reset() {
    if (p_) device_free(dev_, p_);
    p_ = nullptr;
    n_ = 0;
  }
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  Device device() const { return dev_; }
  void zero(Stream s = nullptr) { device_zero(dev_, p_, n_ * sizeof(T), s); }

 private:
  Device dev_ = Device::CPU;
  size_t n_ = 0;
  T* p_ = nullptr;
};

}  // namespace aiayn::kernels
