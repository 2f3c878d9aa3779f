// main() of every GoogleTest binary: freeze_support first, so that a spawn or forkserver child
// started by a test runs its target and exits instead of running the tests again.
#include <gtest/gtest.h>
#include <multiprocessing.hpp>

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
