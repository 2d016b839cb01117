"""`tfft finetune ...` on MirroredStrategy over two logical CPUs.

Run by test_job_real.py as `python mirrored_job_script.py finetune ... --distribution
mirrored` in a fresh process: the CPU must be split into two logical devices
before TensorFlow initialises them, and `MirroredStrategy()` without devices
then mirrors over both. Exits with the command line's status.
"""

import sys

import tensorflow as tf

from tfft.cli.main import main

if __name__ == "__main__":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.exit(main(sys.argv[1:]))
