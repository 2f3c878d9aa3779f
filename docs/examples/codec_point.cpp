// docs/codec.rst: a class crosses the process boundary through its serialize() member.
#include <multiprocessing.hpp>

#include <cstdio>
#include <string>

// doc:begin
struct Point {
  double x = 0, y = 0;
  std::string label;
  template <class Archive> void serialize(Archive& ar) { ar(x, y, label); }
};
// doc:end

static void send_point(mp::Connection c) { c.send(Point{3, 4, "sent"}); }

int main(int argc, char** argv) {
  mp::freeze_support(argc, argv);
  // doc:begin round-trip
  mp::Bytes b = mp::dumps(Point{1, 2, "p"});
  Point p = mp::loads<Point>(b);
  // doc:end round-trip
  // The same encoding carries it over a Pipe to a spawned child and back.
  auto [parent, child] = mp::Pipe();
  mp::Process proc(mp::get_context("spawn"), send_point, child);
  proc.start();
  Point q = parent.recv<Point>();
  proc.join();
  std::printf("%g %g %s; %g %g %s\n", p.x, p.y, p.label.c_str(), q.x, q.y, q.label.c_str());
  return p.x == 1 && p.y == 2 && p.label == "p" && q.x == 3 && q.label == "sent" ? 0 : 1;
}
