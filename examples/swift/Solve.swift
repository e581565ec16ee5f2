// The app loop of an hrmc package in Swift: init, then chunkK (or step) until every sample has halted.
// Line for line the loop of `app_loop` in hrmc/parity/mac_check/check.py, which is tested on Linux through the MIL
// replay; this file was not compiled here (no macOS): see README.md beside it.
//
// Needs macOS 15 / iOS 18 (multifunction packages). Add the .mlpackage to your Xcode target, or compile it
// at run time with MLModel.compileModel(at:).

import CoreML

struct Solution {
    let answer: MLMultiArray     // [B, L] int32: each sample's argmax of its logits at the step it halted
    let haltStep: MLMultiArray   // [B] int32: the steps each sample ran
}

func function(_ name: String, of package: URL) throws -> MLModel {
    let configuration = MLModelConfiguration()
    configuration.computeUnits = .cpuAndNeuralEngine
    configuration.functionName = name
    return try MLModel(contentsOf: package, configuration: configuration)
}

/// Solves a batch: `inputs` [B, L] and `puzzleIdentifiers` [B], int32, the package's batch B.
/// `chunkName`: "chunk4" for a package lowered with --chunk 4, else "step"; `budget`: the package's budget
/// (its metadata's hrmc.budget).
func solve(package: URL, inputs: MLMultiArray, puzzleIdentifiers: MLMultiArray,
           chunkName: String = "step", budget: Int) throws -> Solution {
    let initial = try function("init", of: package)
    let chunk = try function(chunkName, of: package)
    let given: [String: Any] = ["inputs": inputs, "puzzle_identifiers": puzzleIdentifiers]
    let carryNames = ["z_H", "z_L", "steps", "halted"]

    // carry = init(inputs)
    let start = try initial.prediction(from: try MLDictionaryFeatureProvider(dictionary: given))
    var carry: [String: MLMultiArray] = [:]
    for name in carryNames { carry[name] = start.featureValue(for: name)!.multiArrayValue! }
    let batch = carry["steps"]!.count
    var answer: MLMultiArray? = nil

    for _ in 0..<budget {
        if allHalted(carry["halted"]!) { break }
        var feed = given
        for (name, value) in carry { feed[name] = value }
        let out = try chunk.prediction(from: try MLDictionaryFeatureProvider(dictionary: feed))
        // the rows of a call are its K steps; a sample's answer comes from the row of the step it halted
        var haltedBefore = (0..<batch).map { carry["halted"]![$0].int32Value != 0 }
        let haltedPerStep = out.featureValue(for: "halted_per_step")!.multiArrayValue!  // [K, B]
        let logits = out.featureValue(for: "logits")!.multiArrayValue!                   // [K, B, L, V]
        let (rows, length, vocabulary) = (logits.shape[0].intValue, logits.shape[2].intValue, logits.shape[3].intValue)
        if answer == nil {
            answer = try MLMultiArray(shape: [NSNumber(value: batch), NSNumber(value: length)], dataType: .int32)
        }
        for j in 0..<rows {
            for b in 0..<batch where !haltedBefore[b] {
                for position in 0..<length {
                    var best = 0
                    var bestValue = -Float.infinity
                    for token in 0..<vocabulary {
                        let value = logits[[j, b, position, token] as [NSNumber]].floatValue
                        if value > bestValue { (best, bestValue) = (token, value) }  // first of equals, as argmax
                    }
                    answer![[b, position] as [NSNumber]] = NSNumber(value: Int32(best))
                }
            }
            haltedBefore = (0..<batch).map { haltedPerStep[[j, $0] as [NSNumber]].int32Value != 0 }
        }
        for name in carryNames { carry[name] = out.featureValue(for: name + "_next")!.multiArrayValue! }
    }
    return Solution(answer: answer!, haltStep: carry["steps"]!)
}

func allHalted(_ halted: MLMultiArray) -> Bool {
    (0..<halted.count).allSatisfy { halted[$0].int32Value != 0 }
}
