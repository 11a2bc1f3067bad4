{
  "targets": [
    {
      "target_name": "postcopy",
      "sources": ["native/addon.cc", "native/args.cc", "native/checksum.cc", "native/errors.cc", "native/file-mapping.cc", "native/mapping.cc", "native/pagemap.cc", "native/page-io.cc", "native/placement.cc", "native/socket.cc", "native/userfaultfd.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NAPI_CPP_EXCEPTIONS", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
