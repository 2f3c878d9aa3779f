// A program whose main() starts a Process WITHOUT calling mp::freeze_support first (unless
// MP_HELPER_FREEZE is set). Run as a spawn child, its start() must throw std::logic_error telling
// to call freeze_support: it then exits 42 (43 for another message). With MP_HELPER_FREEZE it
// calls freeze_support and, being another build than the parent, must refuse the recipe.
#include <multiprocessing.hpp>

#include <cstdlib>
#include <string>

static void nothing() {}

int main(int argc, char** argv) {
  if (std::getenv("MP_HELPER_FREEZE")) mp::freeze_support(argc, argv);
  try {
    mp::Process p(mp::get_context("spawn"), nothing);
    p.start();
    p.join(std::chrono::seconds(60));
    return 0;
  } catch (const std::logic_error& e) {
    return std::string(e.what()).find("mp::freeze_support(argc, argv)") != std::string::npos ? 42 : 43;
  }
}
