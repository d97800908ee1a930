// swift-tools-version:5.7
// MiniCPMVEdge: Swift wrapper over the minicpmv_edge.h C ABI. Not built in this repo's CI
// (no Swift toolchain on Linux runners here); build MiniCPMVEdgeBridge.xcframework first
// (mobile_bridge/README.md, "iOS") and place it next to this file.
import PackageDescription

let package = Package(
    name: "MiniCPMVEdge",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [.library(name: "MiniCPMVEdge", targets: ["MiniCPMVEdge"])],
    targets: [
        // libminicpmv_edge_bridge + llama.cpp + mtmd (static), headers: minicpmv_edge.h + module.modulemap
        .binaryTarget(name: "CMiniCPMVEdge", path: "MiniCPMVEdgeBridge.xcframework"),
        .target(name: "MiniCPMVEdge", dependencies: ["CMiniCPMVEdge"],
                linkerSettings: [.linkedFramework("Accelerate"), .linkedFramework("Metal"),
                                 .linkedFramework("Foundation"), .linkedLibrary("c++")]),
    ]
)
