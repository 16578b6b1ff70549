"""The demo PRM pair on the synthetic ``arith`` task: training, on-disk layouts, evaluation."""
